//! The job sink: what a request's jobs become in Redis, acknowledged before
//! the caller hears 2xx.
//!
//! [`Sink::enqueue`] takes one request's [`WorkflowJobs`] (or an
//! [`OutreachJob`]), picks this thread's writer (`writers`), writes the
//! jobs in the configured [`Layout`] (`streams`: one `XADD` per match;
//! `bullmq`: one script call adding every match as a BullMQ job), and
//! returns once Redis acknowledged every one. When Redis cannot take them
//! and a spool is configured, they are synced to the spool instead and
//! replayed later (`fallback`).
//!
//! One file per concern: [`job`] the records, `streams` and `bullmq` the
//! two layouts, `writers` the per-thread lanes, `lane` the lean writer
//! connection and `wire` where it connects and how it speaks RESP,
//! `replicas` the replay's `WAIT`, `fallback` the spool fallback and replay,
//! `tickets` the fates of spooled copies a late reply may cancel, [`error`]
//! the errors (a leaf). The children import each other, never this facade.
//!
//! # Failure and delivery
//! - A lane that is down, stalled (`redis.stall_after_ms`) or full refuses
//!   at once ([`SinkError::Disconnected`], `Stalled`, `Backpressure`):
//!   nothing was sent, and the caller gets a quick 503 (or the spool).
//! - Each request has a deadline (`redis.command_timeout_ms`).
//! - A write is never re-sent by a writer after a reconnect: a caller told
//!   503 will retry, and a re-send would double its jobs. What remains
//!   ambiguous is a write Redis executed whose acknowledgement was lost
//!   (connection cut, or the deadline passed): the caller hears 503
//!   `JOB_STORE_UNCONFIRMED`, retries, and the job exists twice. Delivery is
//!   therefore **at least once**; a worker drops a duplicate by
//!   (`requestId`, `workflowId`) when callers send their own `X-Request-Id`
//!   on retries, and otherwise by the payload's own lead id. With a spool, a
//!   late reply on a still-open connection cancels the spooled copy.

mod bullmq;
pub(crate) mod error;
mod fallback;
pub(crate) mod job;
mod lane;
mod replicas;
mod retention;
mod streams;
mod tickets;
mod wire;
mod writers;

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use fred::prelude::*;

pub(crate) use self::{
    error::SinkError,
    job::{OutreachJob, Stored, WorkflowJobs},
    retention::{may_evict_jobs, memory_infos, stream_groups},
};
use self::{
    lane::{Due, Lane, LaneSettings},
    writers::Route,
};
use crate::{
    config::{Config, SinkKind},
    error::Reject,
    metrics as m,
    redis::Target,
    settings::{Settings, SharedSettings},
    spool::Spool,
};

/// Behind Sentinel, the service's name and what each sentinel of
/// `target`'s URL names as its primary, asked as the job writers ask them,
/// or why it could not be asked; `None` elsewhere. `client`: a fred client
/// of the same target.
pub(crate) async fn sentinel_answers(
    target: &Target,
    client: &Client,
) -> Result<Option<wire::SentinelAnswers>, fred::error::Error> {
    let endpoint = wire::Endpoint::new(target, client, b"")?;
    Ok(endpoint.ask_each_sentinel().await)
}

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
        lane: &Lane,
        jobs: &WorkflowJobs,
        settings: &Settings,
        due: Due,
    ) -> Result<(), SinkError> {
        match self {
            Layout::Streams => streams::write_workflow(lane, jobs, settings, due).await,
            // Boxed: the stream layout's future stays as small as before.
            Layout::Bullmq(q) => Box::pin(bullmq::write_workflow(lane, q, jobs, due)).await,
        }
    }

    async fn write_outreach(
        &self,
        lane: &Lane,
        job: &OutreachJob,
        settings: &Settings,
        due: Due,
    ) -> Result<Bytes, SinkError> {
        match self {
            Layout::Streams => streams::write_outreach(lane, job, settings, due).await,
            Layout::Bullmq(q) => Box::pin(bullmq::write_outreach(lane, q, job, due)).await,
        }
    }

    /// The keys whose slots place the workflow and outreach writes in a
    /// cluster.
    fn route_keys<'a>(&'a self, config: &'a Config) -> [&'a [u8]; 2] {
        match self {
            Layout::Streams => [
                config.streams.workflow.as_bytes(),
                config.streams.outreach.as_bytes(),
            ],
            Layout::Bullmq(q) => bullmq::route_keys(q),
        }
    }

    /// The workflow and outreach writes' permission checks.
    fn write_checks(&self, config: &Config) -> [wire::Check; 2] {
        match self {
            Layout::Streams => [&config.streams.workflow, &config.streams.outreach]
                .map(|stream| wire::Check::xadd(stream.as_bytes())),
            Layout::Bullmq(q) => bullmq::write_checks(q),
        }
    }

    /// The workflow and outreach writes' permission checks, each with the
    /// key whose slot places it in a cluster (what `check-redis` asks).
    pub(crate) fn checks_with_keys(&self, config: &Config) -> [(wire::Check, Vec<u8>); 2] {
        let [workflow, outreach] = self.write_checks(config);
        let [workflow_key, outreach_key] = self.route_keys(config);
        [
            (workflow, workflow_key.to_vec()),
            (outreach, outreach_key.to_vec()),
        ]
    }

    /// In BullMQ mode, each queue's name and meta hash (nothing in streams
    /// mode): what `check-redis` reads of the Workers' side.
    pub(crate) fn queue_metas(&self) -> Vec<(String, Bytes)> {
        match self {
            Layout::Streams => Vec::new(),
            Layout::Bullmq(q) => bullmq::metas(q).into(),
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
    /// Writes answered before their reply, whose spooled copies a late
    /// reply cancels (with a spool, without `WAIT`).
    tickets: Option<Arc<tickets::Tickets>>,
    /// The tickets settled stored, for the replay task to record in the
    /// spool (taken when it starts).
    settled: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u64>>>>,
    metrics: SinkMetrics,
}

impl Sink {
    /// Builds the writers and starts connecting them in the background
    /// (requests get [`SinkError::Disconnected`] until theirs is up): the
    /// shared client on the current runtime, a lane on each of `cores`.
    pub(crate) fn connect(
        target: &Target,
        config: &Config,
        spool: Option<Spool>,
        cores: &[tokio::runtime::Handle],
        layout: Layout,
    ) -> Result<Self, Error> {
        let wait_replicas = config.redis.wait_replicas;
        // Half the command deadline: the writes queued behind a WAIT in
        // Redis still get their answer in time.
        let wait = (wait_replicas > 0).then_some((wait_replicas, target.command_timeout / 2));
        // Late replies settle spooled copies only where a write's own reply
        // is its confirmation (no WAIT) and there is a spool to settle.
        let (tickets, settled) = match (&spool, wait) {
            (Some(_), None) => {
                let (tickets, settled) = tickets::Tickets::new();
                (Some(Arc::new(tickets)), Some(settled))
            }
            _ => (None, None),
        };
        let lanes = LaneSettings {
            max_pending: config.redis.max_pending_commands,
            wait,
            tickets: tickets.clone(),
            keepalive: config.redis.keepalive(),
        };
        let writers = writers::Writers::connect(
            target,
            &lanes,
            layout.route_keys(config),
            layout.write_checks(config),
            cores,
        )?;
        let (duration, batch) = m::sink_histograms();
        Ok(Self {
            writers,
            spool,
            layout,
            wait,
            tickets,
            settled: Arc::new(std::sync::Mutex::new(settled)),
            metrics: SinkMetrics {
                duration,
                batch,
                workflow: metrics::counter!(m::JOBS_WRITTEN, "stream" => "workflow"),
                outreach: metrics::counter!(m::JOBS_WRITTEN, "stream" => "outreach"),
            },
        })
    }

    /// The shared client (for the idempotency store).
    pub(crate) fn redis(&self) -> &Client {
        self.writers.shared()
    }

    /// Behind Sentinel, the primary the sentinels name now.
    pub(crate) fn named_primary(&self) -> Option<crate::redis::NamedPrimary> {
        self.writers.named_primary()
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
        let started = Instant::now();
        let stored = self.store_workflow(jobs, settings, started).await;
        if let Ok(Stored::Redis(())) = stored {
            self.metrics.batch.record(jobs.len() as f64);
        }
        self.account(started, jobs.len(), &self.metrics.workflow, stored)
    }

    async fn store_workflow(
        &self,
        jobs: &WorkflowJobs,
        settings: &Settings,
        started: Instant,
    ) -> Result<Stored, SinkError> {
        let due = Due::of(settings, started);
        let written = match self.writers.current(Route::Workflow) {
            Some(lane) => self.layout.write_workflow(lane, jobs, settings, due).await,
            None => Err(SinkError::Disconnected),
        };
        match written {
            Ok(()) => Ok(Stored::Redis(())),
            Err(e) => {
                // Spooled in parts of the size a write goes in.
                let per_part = (lane::PART_BYTES / jobs.entry_bytes()).max(1);
                let parts = jobs.len().div_ceil(per_part);
                let spool_part = |part: usize, out: &mut Vec<u8>| match (
                    parts,
                    jobs.workflows.chunks(per_part).nth(part),
                ) {
                    (2.., Some(workflows)) => {
                        self.layout
                            .spool_workflow(out, &jobs.part(workflows), settings);
                    }
                    _ => self.layout.spool_workflow(out, jobs, settings),
                };
                let fallback = self.fallback(jobs.len());
                Box::pin(fallback.spool_parts(e, parts, spool_part)).await
            }
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
        let started = Instant::now();
        let stored = self.store_outreach(job, settings, started).await;
        self.account(started, 1, &self.metrics.outreach, stored)
    }

    async fn store_outreach(
        &self,
        job: &OutreachJob,
        settings: &Settings,
        started: Instant,
    ) -> Result<Stored<Bytes>, SinkError> {
        let due = Due::of(settings, started);
        let written = match self.writers.current(Route::Outreach) {
            Some(lane) => self.layout.write_outreach(lane, job, settings, due).await,
            None => Err(SinkError::Disconnected),
        };
        match written {
            Ok(id) => Ok(Stored::Redis(id)),
            Err(e) => {
                self.fallback(1)
                    .spool_or(e, |out| self.layout.spool_outreach(out, job, settings))
                    .await
            }
        }
    }

    /// Where a request's `records` go when Redis does not take them.
    fn fallback(&self, records: usize) -> fallback::Fallback<'_> {
        fallback::Fallback {
            spool: self.spool.as_ref(),
            tickets: self.tickets.as_deref(),
            records,
        }
    }

    /// The bookkeeping of one request's write: its duration and jobs when
    /// Redis acknowledged them, the failure's reason, the caller's answer.
    fn account<T>(
        &self,
        started: Instant,
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

    /// Keeps the shared client's idle connections open against a Redis
    /// `timeout` (the lanes ping their own), until `stop` changes.
    pub(crate) fn spawn_keep_alive(
        &self,
        every: std::time::Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        drop(crate::redis::spawn_keep_alive(
            self.writers.shared().clone(),
            every,
            stop,
        ));
    }

    /// Starts watching what Redis does to jobs it acknowledged: an
    /// eviction policy that may drop them, and (in streams mode) entries
    /// trimmed before a consumer group read them. It ends with `stop`, and
    /// nothing waits for it.
    pub(crate) fn spawn_retention_watch(
        &self,
        settings: SharedSettings,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        retention::spawn(
            self.writers.shared().clone(),
            matches!(self.layout, Layout::Streams).then_some(settings),
            stop,
        )
    }

    /// Starts replaying the spool into Redis (no-op without a spool).
    pub(crate) fn spawn_replay(
        &self,
        settings: SharedSettings,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let spool = self.spool.clone()?;
        let settled = self
            .settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Some(fallback::spawn_replay(
            spool,
            self.writers.clone(),
            self.wait,
            self.tickets.clone().zip(settled),
            settings,
            stop,
        ))
    }

    /// The spool, when one is configured.
    pub(crate) fn spool(&self) -> Option<&Spool> {
        self.spool.as_ref()
    }

    /// Closes the connections (after in-flight commands were answered).
    /// Call it before the serving threads stop: their writers' connection
    /// tasks run there.
    pub(crate) async fn close(&self) {
        self.writers.close().await;
    }
}

//! The job sink: stream entries into Redis with `XADD … MAXLEN ~ N *`.
//!
//! Each serving thread has a fred client of its own (one shared client
//! serves everything else). fred pipelines commands from concurrent tasks
//! onto its connection, so many requests' XADDs leave in one write. A
//! request with several matches writes all its entries in one script call
//! (the `XADD`s run in Redis, the payload is sent once): one command per
//! request instead of one per job, which was most of the ingress's cost per
//! extra match. [`StreamSink::enqueue`] returns only after Redis has
//! acknowledged every entry, which is when the caller may hear 202.
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
//!
//! # Spool
//! With a spool ([`crate::spool`]) configured, jobs Redis does not take
//! (disconnected, timeout, refused) are synced to local disk instead and the
//! caller still hears success; [`StreamSink::spawn_replay`] writes them to
//! Redis once it is back. A timed-out write may have landed too: the replayed
//! copy is then a duplicate a worker drops by (`requestId`, `workflowId`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tracing::{info, warn};

use crate::{
    id::Id,
    metrics as m,
    route::Workflows,
    settings::{Settings, SharedSettings},
    spool::{self, Spool, SpoolError},
};
use fred::{
    prelude::*,
    types::streams::{XCapKind, XCapTrim},
};

/// Why jobs could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The client has no live connection to Redis.
    #[error("redis is not connected")]
    Disconnected,
    /// Redis did not acknowledge in time (the entry may still be written).
    #[error("redis did not answer in time")]
    Timeout,
    /// Too many commands queued towards Redis.
    #[error("too many commands queued towards redis")]
    Backpressure,
    /// Redis answered with an error.
    #[error("redis refused the write: {0}")]
    Redis(#[source] Error),
    /// Redis could not take the jobs and neither could the spool.
    #[error("redis could not take the jobs ({redis}) and the spool refused them: {spool}")]
    Spool {
        /// Why Redis did not take them.
        redis: &'static str,
        /// Why the spool refused them.
        #[source]
        spool: SpoolError,
    },
}

impl SinkError {
    /// A bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Disconnected => "disconnected",
            SinkError::Timeout => "timeout",
            SinkError::Backpressure => "backpressure",
            SinkError::Redis(_) => "redis_error",
            SinkError::Spool {
                spool: SpoolError::Full,
                ..
            } => "spool_full",
            SinkError::Spool { .. } => "spool_failed",
        }
    }
}

impl From<Error> for SinkError {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Timeout => SinkError::Timeout,
            ErrorKind::Backpressure => SinkError::Backpressure,
            ErrorKind::Canceled | ErrorKind::IO => SinkError::Disconnected,
            _ => SinkError::Redis(e),
        }
    }
}

/// One request's `tether:jobs:workflow` entries: one per matched workflow,
/// every other field shared, as the contract names them.
#[derive(Debug, Clone)]
pub struct WorkflowJobs {
    /// `workflowId` of each entry, in the order they are written.
    pub workflows: Workflows,
    /// `orgId`
    pub org_id: Bytes,
    /// `userId`
    pub user_id: Bytes,
    /// `webhookId`
    pub webhook_id: Bytes,
    /// `payload`: the body minus `webhookId`, as sent.
    pub payload: Bytes,
    /// `receivedAt`: unix ms, decimal text.
    pub received_at: Bytes,
    /// `requestId`
    pub request_id: Bytes,
}

impl WorkflowJobs {
    /// The fields of `workflow`'s entry, in the contract's order.
    pub fn pairs<'a>(&'a self, workflow: &'a Id) -> [(&'static str, &'a Bytes); 7] {
        [
            ("workflowId", workflow.bytes()),
            ("orgId", &self.org_id),
            ("userId", &self.user_id),
            ("webhookId", &self.webhook_id),
            ("payload", &self.payload),
            ("receivedAt", &self.received_at),
            ("requestId", &self.request_id),
        ]
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.workflows.len()
    }

    /// True when there is none to write.
    pub fn is_empty(&self) -> bool {
        self.workflows.is_empty()
    }
}

/// One `tether:jobs:outreach` entry, fields as the contract names them.
#[derive(Debug, Clone)]
pub struct OutreachJob {
    /// `configurationId`
    pub configuration_id: Bytes,
    /// `userId`
    pub user_id: Bytes,
    /// `orgId`
    pub org_id: Bytes,
    /// `format`: `raw` or `fixed`.
    pub format: Bytes,
    /// `contacts`: JSON object text.
    pub contacts: Bytes,
    /// `applications`: JSON object text.
    pub applications: Bytes,
    /// `conversations`: JSON object text.
    pub conversations: Bytes,
    /// `receivedAt`: unix ms, decimal text.
    pub received_at: Bytes,
    /// `requestId`
    pub request_id: Bytes,
}

impl OutreachJob {
    /// The entry's fields, in the contract's order.
    pub fn pairs(&self) -> [(&'static str, &Bytes); 9] {
        [
            ("configurationId", &self.configuration_id),
            ("userId", &self.user_id),
            ("orgId", &self.org_id),
            ("format", &self.format),
            ("contacts", &self.contacts),
            ("applications", &self.applications),
            ("conversations", &self.conversations),
            ("receivedAt", &self.received_at),
            ("requestId", &self.request_id),
        ]
    }
}

/// Adds one `tether:jobs:workflow` entry per workflow id, in the contract's
/// field order, every other field shared.
/// `KEYS[1]`: the stream; `ARGV`: maxlen, orgId, userId, webhookId, payload,
/// receivedAt, requestId, then the workflow ids. Answers how many it added.
const ADD_JOBS_SCRIPT: &str = r#"
for i = 8, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'workflowId', ARGV[i], 'orgId', ARGV[2], 'userId', ARGV[3],
    'webhookId', ARGV[4], 'payload', ARGV[5], 'receivedAt', ARGV[6],
    'requestId', ARGV[7])
end
return #ARGV - 7
"#;

/// Writes every entry of `jobs` in one script call: one command and the
/// payload sent once, instead of a command per entry.
async fn add_all(
    client: &Client,
    stream: &Key,
    settings: &Settings,
    jobs: &WorkflowJobs,
) -> Result<(), Error> {
    let mut args = Vec::with_capacity(10 + jobs.len());
    args.push(Value::from_static_str(ADD_JOBS_SCRIPT));
    args.push(Value::Integer(1));
    args.push(Value::Bytes(stream.clone().into_bytes()));
    args.push(Value::Integer(settings.stream_maxlen));
    for field in [
        &jobs.org_id,
        &jobs.user_id,
        &jobs.webhook_id,
        &jobs.payload,
        &jobs.received_at,
        &jobs.request_id,
    ] {
        args.push(Value::Bytes(field.clone()));
    }
    args.extend(
        jobs.workflows
            .iter()
            .map(|w| Value::Bytes(w.bytes().clone())),
    );
    let added: i64 = client
        .custom(crate::replica::eval_pipelined(), args)
        .await?;
    if usize::try_from(added).ok() == Some(jobs.len()) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Unknown,
            "the job script added another number of entries",
        ))
    }
}

/// fred's form of an entry's fields.
fn fields<const N: usize>(pairs: [(&'static str, &Bytes); N]) -> Vec<(Key, Value)> {
    pairs
        .into_iter()
        .map(|(k, v)| (Key::from_static_str(k), Value::Bytes(v.clone())))
        .collect()
}

/// Appends the spool frame of one entry to `out`.
fn spool_frame<const N: usize>(
    out: &mut Vec<u8>,
    stream: &Key,
    pairs: [(&'static str, &Bytes); N],
) {
    spool::encode(
        out,
        stream.as_bytes(),
        pairs.into_iter().map(|(k, v)| (k.as_bytes(), &v[..])),
    );
}

/// Where a request's jobs were stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Acknowledged by Redis.
    Redis,
    /// Some or all went to the local spool (synced to disk), to be replayed.
    Spooled,
}

/// Replays every sealed segment; `resume` remembers how far a segment got
/// when Redis went away mid-way.
async fn replay(
    spool: &Spool,
    client: &Client,
    settings: &SharedSettings,
    resume: &mut Option<(std::path::PathBuf, usize)>,
) -> Result<(), SinkError> {
    let replayed = metrics::counter!(m::SPOOL_REPLAYED);
    let segments = spool.seal().await.map_err(|spool| SinkError::Spool {
        redis: "replay",
        spool,
    })?;
    for path in segments {
        let segment = Spool::read(path.clone())
            .await
            .map_err(|spool| SinkError::Spool {
                redis: "replay",
                spool,
            })?;
        let mut from = match resume {
            Some((p, at)) if *p == path => *at,
            _ => 0,
        };
        if from == 0 {
            spool::report_skipped(&path, &segment);
        }
        while from < segment.records.len() {
            let s = settings.load();
            let client = client.with_options(&options(&s));
            let end = (from + 256).min(segment.records.len());
            // One connection writes them in order; fred pipelines the batch.
            let results = futures::future::join_all(segment.records[from..end].iter().map(|r| {
                let fields: Vec<(Key, Value)> = r
                    .fields
                    .iter()
                    .map(|(k, v)| (Key::from(k.clone()), Value::Bytes(v.clone())))
                    .collect();
                client.xadd::<Value, _, _, _, _>(
                    Key::from(r.stream.clone()),
                    false,
                    cap(&s),
                    "*",
                    fields,
                )
            }))
            .await;
            let ok = results.iter().take_while(|r| r.is_ok()).count();
            replayed.increment(ok as u64);
            from += ok;
            if let Some(Err(e)) = results.into_iter().nth(ok) {
                *resume = Some((path, from));
                return Err(e.into());
            }
        }
        *resume = None;
        spool
            .remove(path.clone())
            .await
            .map_err(|spool| SinkError::Spool {
                redis: "replay",
                spool,
            })?;
        info!(segment = %path.display(), records = segment.records.len(), "spool segment replayed into redis");
    }
    Ok(())
}

/// Settings of the sink.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Redis URL.
    pub redis_url: String,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// Per-command deadline.
    pub command_timeout: Duration,
    /// Cap on commands queued towards Redis.
    pub max_pending_commands: usize,
}

fn cap(settings: &Settings) -> (XCapKind, XCapTrim, i64) {
    (
        XCapKind::MaxLen,
        XCapTrim::AlmostExact,
        settings.stream_maxlen,
    )
}

fn options(settings: &Settings) -> Options {
    Options {
        timeout: Some(settings.command_timeout),
        ..Default::default()
    }
}

// === impl StreamSink ===

/// Writes jobs to Redis Streams through auto-pipelining clients: one per
/// serving thread ([`crate::cores`]), connected from that thread so its
/// replies wake requests without crossing threads, and one shared client for
/// everything off those threads (the spool replay, idempotency records).
#[derive(Clone)]
pub struct StreamSink {
    client: Client,
    /// Indexed by [`crate::cores::current`].
    writers: Arc<[Client]>,
    /// Clients that have connected at least once.
    connected: Arc<AtomicUsize>,
    waiters: Arc<[tokio::task::JoinHandle<()>]>,
    spool: Option<Spool>,
}

/// One fred client with the sink's settings (not connected yet).
fn new_client(settings: &SinkSettings) -> Result<Client, Error> {
    let mut config = Config::from_url(&settings.redis_url)?;
    config.fail_fast = false;
    let s = settings.clone();
    Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = s.connect_timeout;
            c.internal_command_timeout = s.command_timeout;
            c.max_command_buffer_len = s.max_pending_commands;
            // Never replay a write after a reconnect: its caller may
            // already have been told 503 and be retrying.
            c.max_command_attempts = 1;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            };
        })
        .with_performance_config(|p| {
            p.default_command_timeout = s.command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build()
}

impl StreamSink {
    /// Builds the clients and starts connecting them in the background
    /// (requests get [`SinkError::Disconnected`] until theirs is up): the
    /// shared one on the current runtime, one writer on each of `cores`.
    pub fn connect(
        settings: &SinkSettings,
        spool: Option<Spool>,
        cores: &[tokio::runtime::Handle],
    ) -> Result<Self, Error> {
        let client = new_client(settings)?;
        let writers = cores
            .iter()
            .map(|_| new_client(settings))
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
        let waiters = std::iter::once(start(&client, &tokio::runtime::Handle::current()))
            .chain(writers.iter().zip(cores).map(|(w, rt)| start(w, rt)))
            .collect();
        Ok(Self {
            client,
            writers: writers.into(),
            connected,
            waiters,
            spool,
        })
    }

    /// The shared client (for the idempotency store).
    pub fn redis(&self) -> &Client {
        &self.client
    }

    /// The client job writes use on this thread.
    fn writer(&self) -> &Client {
        crate::cores::current()
            .and_then(|i| self.writers.get(i))
            .unwrap_or(&self.client)
    }

    /// True once every client connected to Redis at least once.
    pub fn has_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) == 1 + self.writers.len()
    }

    /// Stores every entry of `jobs` on the workflow stream of `settings`;
    /// `Ok` only once Redis acknowledged all of them, or (with a spool) they
    /// are synced to the spool. One entry is one `XADD`; several are one
    /// script call, so they are acknowledged, spooled or refused together
    /// (should Redis fail midway through the script, what it wrote stays and
    /// the spooled copies are duplicates a worker drops by requestId and
    /// workflowId).
    pub async fn enqueue(
        &self,
        jobs: &WorkflowJobs,
        settings: &Settings,
    ) -> Result<Stored, SinkError> {
        let stream = &settings.workflow_stream;
        let spool_all = |out: &mut Vec<u8>| {
            for workflow in jobs.workflows.iter() {
                spool_frame(out, stream, jobs.pairs(workflow));
            }
        };
        let writer = self.writer();
        if !writer.is_connected() {
            return Box::pin(self.spool_or(SinkError::Disconnected, spool_all)).await;
        }
        let client = writer.with_options(&options(settings));
        // Each of fred's command futures is kilobytes; boxed, it is moved
        // once, instead of growing every future that awaits this one (each
        // is moved whole when created).
        let written = match &jobs.workflows[..] {
            [] => return Ok(Stored::Redis),
            [workflow] => Box::pin(client.xadd::<Value, _, _, _, _>(
                stream.clone(),
                false,
                cap(settings),
                "*",
                fields(jobs.pairs(workflow)),
            ))
            .await
            .map(drop),
            _ => Box::pin(add_all(&client, stream, settings, jobs)).await,
        };
        match written {
            Ok(()) => Ok(Stored::Redis),
            Err(e) => Box::pin(self.spool_or(SinkError::from(e), spool_all)).await,
        }
    }

    /// Stores one outreach job; returns its stream entry id once Redis
    /// acknowledged it, or `None` once it is synced to the spool.
    pub async fn enqueue_outreach(
        &self,
        job: &OutreachJob,
        settings: &Settings,
    ) -> Result<Option<Bytes>, SinkError> {
        let stream = &settings.outreach_stream;
        let writer = self.writer();
        let error = if writer.is_connected() {
            let added: Result<Bytes, Error> = writer
                .with_options(&options(settings))
                .xadd(
                    stream.clone(),
                    false,
                    cap(settings),
                    "*",
                    fields(job.pairs()),
                )
                .await;
            match added {
                Ok(id) => return Ok(Some(id)),
                Err(e) => SinkError::from(e),
            }
        } else {
            SinkError::Disconnected
        };
        self.spool_or(error, |out| spool_frame(out, stream, job.pairs()))
            .await
            .map(|_| None)
    }

    /// With a spool: writes the frames `encode` makes to it and reports
    /// [`Stored::Spooled`]. Without: `error`.
    async fn spool_or(
        &self,
        error: SinkError,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Stored, SinkError> {
        let Some(spool) = &self.spool else {
            return Err(error);
        };
        let mut frames = Vec::new();
        encode(&mut frames);
        let redis = error.reason();
        match spool.append(frames).await {
            Ok(()) => {
                metrics::counter!(m::SPOOL_WRITTEN).increment(1);
                Ok(Stored::Spooled)
            }
            Err(spool) => Err(SinkError::Spool { redis, spool }),
        }
    }

    /// Starts replaying the spool into Redis (no-op without a spool): at
    /// start-up and whenever something is spooled, as soon as Redis is
    /// connected; segments in order, records in order.
    pub fn spawn_replay(
        &self,
        settings: SharedSettings,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let spool = self.spool.clone()?;
        let client = self.client.clone();
        Some(tokio::spawn(async move {
            let mut resume: Option<(std::path::PathBuf, usize)> = None;
            let mut backoff = Duration::from_millis(50);
            loop {
                if spool.bytes() > 0 && client.is_connected() {
                    match replay(&spool, &client, &settings, &mut resume).await {
                        Ok(()) => backoff = Duration::from_millis(50),
                        Err(e) => {
                            warn!(error = %e, "spool replay paused; retrying");
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
                let wait = if spool.bytes() > 0 {
                    backoff
                } else {
                    Duration::from_secs(1)
                };
                tokio::select! {
                    () = spool.appended() => {}
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }))
    }
    /// Closes the connections (after in-flight commands were answered).
    /// Call it before the serving threads stop: their writers' connection
    /// tasks run there.
    pub async fn close(&self) {
        for waiter in self.waiters.iter() {
            waiter.abort();
        }
        let quits = std::iter::once(&self.client)
            .chain(self.writers.iter())
            // QUIT on a client that never connected would wait for a connection.
            .filter(|c| c.is_connected())
            .map(|c| tokio::time::timeout(Duration::from_secs(2), c.quit()));
        futures::future::join_all(quits).await;
    }
}
